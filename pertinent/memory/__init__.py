"""User profiles (decayed event folds) and session states."""
