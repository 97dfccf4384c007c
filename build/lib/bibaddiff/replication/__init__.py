"""Data replication: embeddings, exact nearest neighbours and replication scores.

A generated image "replicates" a training image when the cosine similarity of their embeddings reaches a
threshold tau. tau is calibrated on held-out real images, which the model never saw: only 1% of them reach tau
against their nearest training image, so a replication rate well above 1% means memorisation, not chance
resemblance. Splitting replications by whether the nearest training image is poisoned tests the paper's claim
that poisoned images take part in replication. The datasets of its second claim, that poisoning duplicated images
strengthens the attack, are built in ``bibaddiff.poisoning``.

- ``embedders``: images -> float32 rows of unit L2 norm, so that cosine similarity is a dot product;
- ``neighbours``: exact nearest neighbours and near-duplicate groups;
- ``scores``: tau calibration and the replication report.
"""

from bibaddiff.replication.embedders import EMBEDDER_TYPES, Embedder, build_embedder, l2_normalise
from bibaddiff.replication.neighbours import check_embeddings, near_duplicate_groups, nearest_neighbours
from bibaddiff.replication.scores import calibrate_tau, replication_report

__all__ = ["EMBEDDER_TYPES", "Embedder", "build_embedder", "calibrate_tau", "check_embeddings", "l2_normalise",
           "near_duplicate_groups", "nearest_neighbours", "replication_report"]
