"""Speech data: eSpeak demo corpus, LibriSpeech indexing and client partitions, MFCC k-means targets."""
