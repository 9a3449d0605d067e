"""What runs the metrics on a model: the demo, the forgetting table, one row's evaluation, the scale study."""
