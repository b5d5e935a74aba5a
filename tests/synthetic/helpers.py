"""Sizes of the small synthetic sets the synthetic-data tests generate."""

from __future__ import annotations

SIZE = 96
SMALL = {"num_train_images": 10, "num_validation_images": 5, "num_test_images": 5, "image_size": SIZE}
# Every condition, each in half of the images: enough images that every stage question has a few of each answer.
MULTI = {
    "num_train_images": 30,
    "num_validation_images": 5,
    "num_test_images": 5,
    "image_size": SIZE,
    "conditions": "all",
    "prevalence": "glaucoma=0.5,amd=0.5,hypertensive=0.5,rvo=0.5",
}
