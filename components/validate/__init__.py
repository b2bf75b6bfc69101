"""The validate stage (stage.py): Examples checked against their schema; anomalies stop the run."""
