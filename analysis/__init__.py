"""What a shard folder holds and how hard it is, computed on the project's own parts.

    analysis.logmel_stats  per-track log-mel statistics (DALI graph, the folder's FeatureSpec), class views
    analysis.pca           standardisation on the training split, PCA by SVD
    analysis.baseline      the linear baseline: logistic regression on the statistics
    analysis.leaks         cross-split near-copies (statistics) and exact copies (PCM hashes)
    analysis.plots         matplotlib set up for files (Agg, no math text), atomic PNGs, the shared figures
    analysis.html          a small page writer: every value escaped, nothing external

Layer: above model and loading, below training and inference (training/run_report.py uses it).
"""
