"""Raw data to labels: convert, register, ROI crops, predict (with missing phases) and the HPN union."""
