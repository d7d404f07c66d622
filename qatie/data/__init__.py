"""Stage 1, data: photo sources (clean folders, pairs, DPED, the built-in samples), the fixed clean split, and the phone-camera degradation model (`degrade`)."""
