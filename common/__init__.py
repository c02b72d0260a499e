"""Shared kernel of data-appraisal: wire schemas, appraisal maths (plaintext and MPC), workers."""
