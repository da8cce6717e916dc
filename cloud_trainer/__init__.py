"""Model zoo, tf.data pipelines and tf.distribute training of the global model."""
