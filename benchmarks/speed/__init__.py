"""What things cost: a training step against the peers (``throughput``), the MinkowskiEngine
backend (``minkowski_backend``), the k-NN monitor (``knn_cost``), the input pipeline
(``input_pipeline``), the quickstart's wall time (``quickstart_time``) and memory over a long run
(``memory_growth``)."""
