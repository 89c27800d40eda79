# embed_binary.cmake — write a binary file as a C array (no xxd needed).
#   cmake -DIN=file.bin -DOUT=file.c -DNAME=symbol -P embed_binary.cmake
# Defines `const unsigned char NAME[]` and `const size_t NAME_len`.
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" hexlen)
math(EXPR n "${hexlen} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
file(WRITE "${OUT}" "/* generated from ${IN} by cmake/embed_binary.cmake */\n#include <stddef.h>\n"
  "const unsigned char ${NAME}[] = {${body}};\nconst size_t ${NAME}_len = ${n};\n")
