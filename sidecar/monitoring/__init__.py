"""Monitoring: streaming histograms (native kernel + numpy twin), drift and prediction quality."""
