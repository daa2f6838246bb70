"""Cases and datasets: the dataset format, adapters, splits, augmentation, sampling, phantoms."""
