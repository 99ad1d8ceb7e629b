"""attmemo.builder: a memo database built from a corpus (attmemo build-db).

Runs the model over the texts (recorder: onnxruntime, the recording model of
attmemo.transforms, the tokenizer saved by attmemo.export), trains each layer's key
embedding (train: attmemo.models, torch) and writes the folder atomically (build).
It sits above transforms and export; the folder it writes is read by attmemo.store,
which needs none of this.
"""
