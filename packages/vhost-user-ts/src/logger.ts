// The logging surface the library needs; pino loggers satisfy it. A no-op logger for tests.
export interface LogFn {
  (obj: object, msg?: string): void;
  (msg: string): void;
}

export interface Logger {
  trace: LogFn;
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
}

const noop: LogFn = () => {};
export const silentLogger: Logger = { trace: noop, debug: noop, info: noop, warn: noop, error: noop };
