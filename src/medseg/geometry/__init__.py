"""Geometry: resampling, orientation, crop/pad with inverses, multi-plane ROI."""
