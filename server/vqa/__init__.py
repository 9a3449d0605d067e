"""Visual question answering with every active module applied."""
