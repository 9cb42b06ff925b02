"""How a process meets its devices: XLA compiler flags set before JAX starts (`xla_flags`),
multi-host start-up (`distributed`), the device mesh and batch sharding (`mesh`), and parameter
sharding rules (`partitioning`)."""
