"""One file per algorithm; each is a LightningModule whose loss math lives in small pure functions."""
