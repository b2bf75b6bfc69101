"""The evaluate stage (stage.py): task metrics on the test split, report.html and the blessing."""
