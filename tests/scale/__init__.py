"""Scale-out tests: multi-host, parameter sharding, mixed precision, remat, accumulation."""
