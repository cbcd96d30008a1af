export * from "./checksum.ts";
export * from "./compress.ts";
