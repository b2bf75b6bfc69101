"""Video: single frame, early, late and slow fusion, and Conv3D classifiers of clips (fusion.py)."""
