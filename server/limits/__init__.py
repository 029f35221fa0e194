"""What a worker may spend: the box it runs on and its memory, pixel and CPU budgets."""
