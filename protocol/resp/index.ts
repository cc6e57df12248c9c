/** The RESP codec: request parser (server side), reply writer, request encoder and reply parser (client side). */
export { RespProtocolError } from './errors.js';
export { RespParser, type CommandCallback } from './parser.js';
export { ReplyWriter, encodeCommand, formatDouble } from './writer.js';
export { RespReplyParser, RespReplyError, toJs, type RespValue, type RespReplyParserOptions } from './reply-parser.js';
