"""The label graph ELD is built from: co-occurrence P on the training split and label word vectors Z."""
