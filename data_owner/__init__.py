"""The data owner's side of data-appraisal."""
