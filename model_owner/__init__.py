"""The model owner's side of data-appraisal."""
