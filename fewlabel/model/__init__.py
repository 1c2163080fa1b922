"""The classifier: one SVM per class (svm), training (train), decision rules (rules, calibrate)."""
