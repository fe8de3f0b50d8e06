"""Training for taskembed: losses, data streams, the trainer and the paper's three stages (extra [train])."""
