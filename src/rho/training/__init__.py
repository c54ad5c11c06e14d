"""SelectiveTrainingArguments, SelectiveTrainer, RHO-LOSS candidates, run dirs."""
