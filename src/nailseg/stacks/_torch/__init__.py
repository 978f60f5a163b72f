"""What several torch stacks share (Lightning and MMDetection): the restricted checkpoint loader
and the TensorBoard writer shim. A stack folder imports from here, never from another stack."""
