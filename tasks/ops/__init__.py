"""Operations on a finished output: status, verify (and repair), publish, and importing a review."""
