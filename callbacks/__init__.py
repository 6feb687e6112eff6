"""Lightning callbacks: density histograms, dead-neuron resampling, reconstruction-score evals, the progress bar."""
