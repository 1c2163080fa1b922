"""The classifier: one SVM per class (svm), its cross-validation folds (folds), training (train),
decision rules (rules, calibrate), and the views of features.image_size: auto chosen by its
cross-validated score (selection)."""
