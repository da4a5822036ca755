"""`make bench`: the performance figures the issues ask for, each beside its bare baseline."""
