# KNF checks that a tool can make without rewriting the code: lines of C
# fit 80 columns with tabs of 8, carry no trailing white space, and are
# indented with tabs.  Prints file:line: problem; exits 1 if any.
{
	col = 0
	for (i = 1; i <= length($0); i++) {
		c = substr($0, i, 1)
		col = c == "\t" ? col + 8 - col % 8 : col + 1
	}
	if (col > 80)
		bad(FILENAME ":" FNR ": longer than 80 columns")
	if ($0 ~ /[ \t]+$/)
		bad(FILENAME ":" FNR ": trailing white space")
	if ($0 ~ /^        / && $0 !~ /^ +\*/)
		bad(FILENAME ":" FNR ": indented with spaces")
}
function bad(msg) { print msg; status = 1 }
END { exit status }
