"""The network, its tf.data input, fitting, tuning (and tuning workers), the acquisition-shift
check and the one scoring function."""
