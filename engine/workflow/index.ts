// The workflow format: types, schema, migration, validation, file reading/writing.
export * from './types.ts';
export { checkSchema, workflowSchema } from './schema.ts';
export { MIGRATIONS, migrateWorkflow, type Migration, type MigrateOptions, type MigrateResult } from './migrate.ts';
export { checkConstant, socketsMatch, validateMigrated, validateWorkflow, type ValidateOptions } from './validate.ts';
export { loadWorkflow, parseWorkflowJson, readWorkflowFile, saveWorkflow, type ParseResult, type ReadOptions } from './load.ts';
