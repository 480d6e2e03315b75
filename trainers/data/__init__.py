"""The data layer: Amazon Reviews 2023 preprocessing, processed-dataset loading, candidate sampling, SFT data."""
