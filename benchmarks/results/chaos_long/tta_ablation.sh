#!/bin/bash
# TTA ablation on the chaos6t2 models (benchmarks/accuracy.py chaos ... --tag chaos6t2): medseg predict
# --tta per fold, then one medseg evaluate over all 16 cases. Run from the repository root.
set -e
R=benchmarks/work/chaos/runs/chaos6t2
M=.venv/bin/medseg
OUT=$R/tta_ablation
rm -rf $OUT; mkdir -p $OUT/tta $OUT/notta
start=$(date +%s)
for k in 0 1 2 3 4; do
  $M predict $R/fold_$k/test_images -m $R/fold_$k/medseg_2_5d_u_net___empty_slice_classifier/model -o $OUT/fold_$k --tta --device cpu > $OUT/predict_$k.log 2>&1
  cp $OUT/fold_$k/*.nii.gz $OUT/tta/ 2>/dev/null || find $OUT/fold_$k -name "*.nii.gz" -exec cp {} $OUT/tta/ \;
  cp $R/fold_$k/medseg_2_5d_u_net___empty_slice_classifier/predictions/*.nii.gz $OUT/notta/
done
echo "predict with TTA: $(( $(date +%s) - start )) s"
mkdir -p $OUT/labels; for k in 0 1 2 3 4; do cp $R/fold_$k/test_labels/*.nii.gz $OUT/labels/; done
for v in tta notta; do
  $M evaluate $OUT/$v $OUT/labels --labels liver=1,right_kidney=2,left_kidney=3,spleen=4 --metrics dice,hd95 -o $OUT/eval_$v --overwrite 2>&1 | grep -v "^$"
done
