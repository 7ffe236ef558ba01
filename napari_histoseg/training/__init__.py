"""What every task's training shares: augmentation, splits, seeding and BatchNorm freezing,
the resumable optimiser state."""
