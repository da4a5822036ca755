"""Surveys: the satisfaction survey sent after delivery, its page and its answers. Stands on the
spine and on `aftercare.contact` for when and whether a message may go out.
"""
