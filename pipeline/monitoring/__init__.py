"""Data QA and drift monitoring: unsupervised screening of images and batches."""
