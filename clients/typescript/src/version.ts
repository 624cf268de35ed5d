/** The SDK version reported in the worker's Hello (matches package.json). */
export const SDK_VERSION = "0.1.0";
