"""The domain core, framework-free: parsing, chunking, embedders, retrieval, the agent loop."""
