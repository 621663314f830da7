// shardts/train: the training loop's pieces: trainer, evaluation, optimizer, data, progress.
export { Trainer, traceLm, maxOverMean, type TrainConfig, type StepMetrics } from "./trainer.ts";
export { Evaluator, generate } from "./evaluate.ts";
export { Replicas, replicaInputs, expertRanks } from "./replicas.ts";
export { adamw, adamwScalars, ADAMW_DEFAULTS, type AdamWConfig } from "../optim/adamw.ts";
export { lrAt, type Schedule } from "../optim/schedule.ts";
export { ByteTokenizer, BatchLoader, unigramEntropyBits, unigramEntropyNats, bigramEntropyBits, bigramEntropyNats, type Batch, type BatchLoaderState } from "./data.ts";
export { loadTrainingText, DataError } from "./text.ts";
export { Progress } from "./progress.ts";
