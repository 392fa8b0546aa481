"""The ground floor every other package may import: errors, ImageNet labels and datasets, atomic files."""
