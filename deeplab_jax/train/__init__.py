"""Training: the loop (`loop.train_and_evaluate`), the jitted step (`step`, with gradient
`accumulation`), the state (`state`: creation born sharded, loading a trained model), the
optimiser (`optim`), checkpoints (`checkpoint`), initial weights (`init_weights`) and logs
(`metric_writer`)."""
