"""What the reports of several stages are drawn with: report.html's page (html.py), sample
grids of predictions (sample_grids.py) and mask pictures (mask_pictures.py)."""
