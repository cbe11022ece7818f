"""Inside one step: which op ran in which dtype (op_recorder, autocast_map) and what underflowed backward."""
