"""The Keras stack: tf.keras (tf-keras) + segmentation_models, fed by tf.data. Only this folder
imports TensorFlow, and it never imports torch: the two must not share a process."""
