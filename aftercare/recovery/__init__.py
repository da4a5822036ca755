"""Service recovery: a low survey score (or a negative comment) opens one case per survey, ops are
told at once, and a private apology waits for a person on the review-reply approval machinery."""
